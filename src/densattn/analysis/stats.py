"""Paired statistics over cross-validation folds: is method A really better than method B?

Two methods trained and tested on the *same* folds give paired per-fold scores ``a_k`` and ``b_k``. With the
differences ``d_k = a_k - b_k`` (k = 1..n), mean ``d̄`` and sample standard deviation ``s``:

* **Corrected resampled t-test** (Nadeau & Bengio 2003, "Inference for the Generalization Error", Machine
  Learning 52; Bouckaert & Frank 2004 for cross-validation) — the default::

      se = s * sqrt(1/n + n_test/n_train),   CI = d̄ ± t_{n-1, 0.975} * se,   t = d̄ / se

  The folds' training sets overlap (in 5-fold CV any two share 3/4 of their examples), so the per-fold differences
  are positively correlated and the plain paired t-test's ``s / sqrt(n)`` underestimates the standard error; the
  ``n_test / n_train`` term (1/(k-1) for k-fold) is the correction for that correlation. Both tests remain
  *approximate*: the correction assumes a correlation ``n_test / (n_test + n_train)``, which is a heuristic, and
  with 5 folds the t quantile has only 4 degrees of freedom, so intervals are wide.
* **Plain paired t-test** (``correction="none"``): ``se = s / sqrt(n)``. Reported alongside for reference; it is
  anti-conservative on k-fold results.
* **Wilcoxon signed-rank test** (exact, two-sided, zero differences dropped): distribution-free, but with n = 5
  non-zero differences its smallest possible p-value is ``2 / 2^5 = 0.0625``, so it can never reach 0.05 on 5 folds.

A difference is called *significant* when the (corrected) 95% interval excludes 0.

Example:
    >>> row = paired_difference([0.82, 0.80, 0.85, 0.79, 0.81], [0.80, 0.79, 0.82, 0.79, 0.78], test_fraction=0.25)
    >>> round(row["mean_difference"], 3), row["ci_low"] < row["mean_difference"] < row["ci_high"]
    (0.018, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["paired_difference", "compare_runs", "CORRECTIONS"]

CORRECTIONS = ("nadeau-bengio", "none")


def _t_interval(mean: float, se: float, df: int, confidence: float) -> tuple[float, float, float]:
    """(low, high, two-sided p) of a t statistic ``mean / se`` with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan, math.nan, math.nan
    if se == 0.0:  # every fold gave the same difference: a degenerate, zero-width interval
        return mean, mean, (1.0 if mean == 0.0 else 0.0)
    q = float(scipy_stats.t.ppf(0.5 + confidence / 2, df))
    p = float(2 * scipy_stats.t.sf(abs(mean / se), df))
    return mean - q * se, mean + q * se, p


def _wilcoxon(d: np.ndarray) -> float:
    nonzero = d[d != 0]
    if len(nonzero) < 1:
        return 1.0 if len(d) else math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(scipy_stats.wilcoxon(nonzero, alternative="two-sided", method="exact").pvalue)
        except ValueError:
            return math.nan


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    test_fraction: float | None = None,
    confidence: float = 0.95,
    correction: str = "nadeau-bengio",
) -> dict[str, Any]:
    """Mean of the paired differences ``a_k - b_k`` with a confidence interval and p-values.

    Args:
        a, b: per-fold scores of the two methods, fold k of ``a`` paired with fold k of ``b``.
        test_fraction: ``n_test / n_train`` of the folds for the Nadeau–Bengio correction (default ``1/(n-1)``,
            the ratio of k-fold cross-validation with k = n).
        confidence: level of the interval (0.95).
        correction: ``"nadeau-bengio"`` (corrected resampled t-test) or ``"none"`` (plain paired t-test).

    Returns:
        ``n``, ``differences``, ``mean_difference``, ``std_difference`` (ddof 1), ``ci_low``/``ci_high``/``p_value``
        (with ``correction``), ``t_ci_low``/``t_ci_high``/``t_p_value`` (plain paired t), ``wilcoxon_p_value``,
        ``significant`` (the interval excludes 0), ``correction`` and ``confidence``.

    Raises:
        ValueError: fewer than 2 folds, ``a`` and ``b`` of different lengths, or an unknown ``correction``.

    Example:
        The same 5 paired folds: the plain paired t-test calls the gain significant, the corrected test (whose
        standard error is ``sqrt(1/5 + 0.25) / sqrt(1/5) = 1.5`` times larger) does not:

        >>> a, b = [0.82, 0.80, 0.85, 0.79, 0.81], [0.80, 0.79, 0.82, 0.79, 0.78]
        >>> row = paired_difference(a, b, test_fraction=0.25)
        >>> round(row["mean_difference"], 3), round(row["std_difference"], 4), row["significant"]
        (0.018, 0.013, False)
        >>> round((row["ci_high"] - row["ci_low"]) / (row["t_ci_high"] - row["t_ci_low"]), 6)
        1.5
        >>> round(row["t_p_value"], 3), round(row["p_value"], 3), row["wilcoxon_p_value"]  # one zero difference
        (0.037, 0.109, 0.125)
        >>> paired_difference([0.9, 0.8], [0.7])
        Traceback (most recent call last):
        ...
        ValueError: a and b must be 1-D with one score per fold each, got shapes (2,) and (1,); ...
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(
            f"a and b must be 1-D with one score per fold each, got shapes {a_arr.shape} and {b_arr.shape}; "
            "compare runs trained on the same folds"
        )
    n = len(a_arr)
    if n < 2:
        raise ValueError(f"paired statistics need at least 2 folds, got {n}")
    d = a_arr - b_arr
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    ratio = 1.0 / (n - 1) if test_fraction is None else float(test_fraction)
    if not ratio >= 0:
        raise ValueError(f"test_fraction must be >= 0 (n_test / n_train), got {test_fraction}")
    plain_se = sd / math.sqrt(n)
    corrected_se = sd * math.sqrt(1.0 / n + ratio)
    t_lo, t_hi, t_p = _t_interval(mean, plain_se, n - 1, confidence)
    lo, hi, p = _t_interval(mean, corrected_se if correction == "nadeau-bengio" else plain_se, n - 1, confidence)
    return {
        "n": n,
        "differences": d.tolist(),
        "mean_difference": mean,
        "std_difference": sd,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "t_ci_low": t_lo,
        "t_ci_high": t_hi,
        "t_p_value": t_p,
        "wilcoxon_p_value": _wilcoxon(d),
        "significant": bool(lo > 0 or hi < 0),
        "correction": correction,
        "test_fraction": ratio,
        "confidence": confidence,
    }


def _fold_scores(metrics: dict[str, Any], metric: str, name: str) -> dict[int, float]:
    folds = metrics.get("folds")
    if not folds:
        raise ValueError(f"metrics of {name!r} hold no per-fold results ('folds'); paired statistics need them")
    out = {}
    for i, row in enumerate(folds):
        if metric not in row:
            raise ValueError(f"fold {i} of {name!r} has no {metric!r}; choose one of accuracy, macro_f1")
        out[int(row.get("fold", i))] = float(row[metric])
    return out


def _test_fraction(metrics: dict[str, Any]) -> float | None:
    """Mean ``n_test / n_train`` of the folds (training = train + validation), when the sizes are recorded."""
    ratios = []
    for row in metrics.get("folds", []):
        n_test = row.get("num_test")
        n_train = (row.get("num_train") or 0) + (row.get("num_val") or 0)
        if not n_test or not n_train:
            return None
        ratios.append(n_test / n_train)
    return float(np.mean(ratios)) if ratios else None


def compare_runs(
    metrics_by_method: dict[str, dict[str, Any]],
    reference: str = "daam",
    *,
    metrics: Sequence[str] = ("accuracy", "macro_f1"),
    confidence: float = 0.95,
    correction: str = "nadeau-bengio",
) -> list[dict[str, Any]]:
    """Paired rows ``reference − method`` for every other method, per metric.

    Args:
        metrics_by_method: method name -> a run's ``metrics.json`` dict (needs ``folds`` with per-fold scores and,
            for the correction, ``num_train``/``num_val``/``num_test``). All runs must share the same folds.
        reference: the method every other is compared with (positive differences favour the reference).
        metrics: per-fold keys to compare.
        confidence, correction: as in :func:`paired_difference`.

    Returns:
        One dict per (method, metric): ``reference``, ``method``, ``metric``, ``reference_mean``, ``method_mean``
        and the fields of :func:`paired_difference`.

    Example:
        >>> m = {"daam": {"folds": [{"fold": k, "accuracy": a} for k, a in enumerate([.8, .7, .9])]},
        ...      "conv": {"folds": [{"fold": k, "accuracy": a} for k, a in enumerate([.7, .7, .8])]}}
        >>> [round(r["mean_difference"], 3) for r in compare_runs(m, metrics=("accuracy",))]
        [0.067]
    """
    if reference not in metrics_by_method:
        raise ValueError(
            f"reference method {reference!r} is not among the runs {sorted(metrics_by_method)}; "
            "pass reference= one of them"
        )
    rows = []
    ref = metrics_by_method[reference]
    for name, other in metrics_by_method.items():
        if name == reference:
            continue
        for metric in metrics:
            a, b = _fold_scores(ref, metric, reference), _fold_scores(other, metric, name)
            if sorted(a) != sorted(b):
                raise ValueError(
                    f"{reference!r} has folds {sorted(a)} but {name!r} has {sorted(b)}; paired statistics need "
                    "runs on the same folds (same data, max_samples, folds and seed)"
                )
            keys = sorted(a)
            fraction = _test_fraction(ref)
            row = paired_difference(
                [a[k] for k in keys],
                [b[k] for k in keys],
                test_fraction=fraction,
                confidence=confidence,
                correction=correction,
            )
            rows.append(
                {
                    "reference": reference,
                    "method": name,
                    "metric": metric,
                    "reference_mean": float(np.mean([a[k] for k in keys])),
                    "method_mean": float(np.mean([b[k] for k in keys])),
                    **row,
                }
            )
    return rows
