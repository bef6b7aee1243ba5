"""Ranks and tests across tasks against hand computations and Demšar's (2006) tables."""

from __future__ import annotations

import math

import pytest

from densattn.analysis.ranking import critical_difference, plot_critical_difference, rank_methods

# Demšar (2006), Table 5(a): Nemenyi q_0.05 for k = 2..10 classifiers
DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


def test_ranks_and_friedman_by_hand_without_ties():
    scores = {
        "t1": {"a": 0.90, "b": 0.80, "c": 0.70, "d": 0.60},
        "t2": {"a": 0.85, "b": 0.86, "c": 0.50, "d": 0.40},
        "t3": {"a": 0.70, "b": 0.60, "c": 0.65, "d": 0.10},
    }
    # ranks: t1 a1 b2 c3 d4; t2 b1 a2 c3 d4; t3 a1 c2 b3 d4 -> R = a 4/3, b 2, c 8/3, d 4
    r = rank_methods(scores)
    expected = {"a": 4 / 3, "b": 2.0, "c": 8 / 3, "d": 4.0}
    assert r["average_ranks"] == pytest.approx(expected)
    assert list(r["average_ranks"]) == ["a", "b", "c", "d"]  # best first
    n, k = 3, 4
    chi2 = 12 * n / (k * (k + 1)) * (sum(v * v for v in expected.values()) - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(7.0)  # 1.8 * (80/9 + 20 - 25)
    assert r["friedman"]["statistic"] == pytest.approx(chi2)
    # survival function of chi-square with 3 degrees of freedom, in closed form
    p_value = math.erfc(math.sqrt(chi2 / 2)) + math.sqrt(2 * chi2 / math.pi) * math.exp(-chi2 / 2)
    assert r["friedman"]["p_value"] == pytest.approx(p_value, rel=1e-9)
    f_id = (n - 1) * chi2 / (n * (k - 1) - chi2)
    assert r["friedman"]["iman_davenport"] == pytest.approx(f_id)
    assert r["friedman"]["iman_davenport_df"] == [3, 6]


def test_tied_scores_share_their_average_rank_and_friedman_is_tie_corrected():
    scores = {"t1": {"a": 0.9, "b": 0.9, "c": 0.7}, "t2": {"a": 0.8, "b": 0.6, "c": 0.7}}
    # t1: a, b tie for ranks 1-2 -> 1.5 each, c 3; t2: a 1, c 2, b 3
    r = rank_methods(scores)
    assert r["ranks"]["t1"] == {"a": 1.5, "b": 1.5, "c": 3.0}
    assert r["average_ranks"] == pytest.approx({"a": 1.25, "b": 2.25, "c": 2.5})
    n, k = 2, 3
    ranks = [[1.5, 1.5, 3.0], [1.0, 3.0, 2.0]]
    sums = [sum(row[j] for row in ranks) for j in range(k)]
    raw = 12 / (n * k * (k + 1)) * sum(s * s for s in sums) - 3 * n * (k + 1)
    ties = 2**3 - 2  # one group of two tied scores
    corrected = raw / (1 - ties / (n * k * (k * k - 1)))
    assert r["friedman"]["statistic"] == pytest.approx(corrected)


@pytest.mark.parametrize("k", sorted(DEMSAR_Q05))
def test_critical_difference_matches_demsar_table(k):
    n = 14
    assert critical_difference(k, n) == pytest.approx(DEMSAR_Q05[k] * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_nemenyi_p_values_are_symmetric_and_separate_the_extremes():
    scores = {f"t{i}": {"a": 0.9 + i / 100, "b": 0.8, "c": 0.7, "d": 0.6 - i / 100} for i in range(12)}
    r = rank_methods(scores)
    p = r["nemenyi"]["p_values"]
    assert p["a"]["d"] == pytest.approx(p["d"]["a"])
    assert p["a"]["d"] < 0.05 < p["a"]["b"]
    assert r["average_ranks"]["d"] - r["average_ranks"]["a"] > r["nemenyi"]["critical_difference"]


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="missing"):
        rank_methods({"t1": {"a": 1, "b": 2, "c": 3}, "t2": {"a": 1, "b": 2}})
    with pytest.raises(ValueError, match="at least 2 tasks and 3 methods"):
        rank_methods({"t1": {"a": 1, "b": 2, "c": 3}})
    with pytest.raises(ValueError, match="at least 2 tasks and 3 methods"):
        rank_methods({"t1": {"a": 1, "b": 2}, "t2": {"a": 1, "b": 2}})
    with pytest.raises(ValueError, match="finite"):
        rank_methods({"t1": {"a": 1, "b": 2, "c": float("nan")}, "t2": {"a": 1, "b": 2, "c": 3}})


def test_cd_diagram_is_written(tmp_path):
    scores = {f"t{i}": {"a": 0.9, "b": 0.8 + i / 100, "c": 0.7} for i in range(4)}
    plot_critical_difference(rank_methods(scores), tmp_path / "cd.png", title="toy")
    assert (tmp_path / "cd.png").stat().st_size > 5000
