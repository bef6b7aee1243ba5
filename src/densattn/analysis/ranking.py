"""Comparing several methods over several tasks (Demšar, "Statistical Comparisons of Classifiers over Multiple Data
Sets", JMLR 7, 2006): average ranks, the Friedman test, its Iman–Davenport form, the Nemenyi post-hoc test and the
critical-difference (CD) diagram.

With N tasks and k methods, let ``r_ij`` be the rank of method j on task i (1 = best score, ties share the mean of
the ranks they span) and ``R_j = (1/N) Σ_i r_ij`` the average rank. Then::

    χ²_F = 12N / (k(k+1)) · [Σ_j R_j² − k(k+1)²/4]          Friedman, χ² with k−1 degrees of freedom
    F_F  = (N−1) χ²_F / (N(k−1) − χ²_F)                       Iman–Davenport, F with (k−1, (k−1)(N−1)) d.o.f.
    CD   = q_α · sqrt(k(k+1) / (6N))                          Nemenyi critical difference of average ranks

where ``q_α`` is the studentized range quantile (infinite d.o.f.) divided by √2. When scores tie on a task, χ²_F
is divided by ``1 − Σ(t³ − t) / (N k (k² − 1))`` over the groups of t tied scores (the usual tie correction;
without ties it is 1). Two methods whose average ranks
differ by less than CD are not significantly different. The ranks come from :func:`scipy.stats.rankdata`, χ²_F and
its p-value from :func:`scipy.stats.friedmanchisquare`, the pairwise Nemenyi p-values and the diagram from
``scikit-posthocs`` (:func:`scikit_posthocs.posthoc_nemenyi_friedman`,
:func:`scikit_posthocs.critical_difference_diagram`); this module only arranges them.

Example:
    >>> scores = {"t1": {"a": 0.9, "b": 0.8, "c": 0.7}, "t2": {"a": 0.8, "b": 0.9, "c": 0.7}}
    >>> result = rank_methods(scores)
    >>> result["average_ranks"], result["friedman"]["statistic"]
    ({'a': 1.5, 'b': 1.5, 'c': 3.0}, 3.0)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["critical_difference", "plot_critical_difference", "rank_methods"]


def critical_difference(num_methods: int, num_tasks: int, *, alpha: float = 0.05) -> float:
    """The Nemenyi critical difference ``q_α · sqrt(k(k+1)/(6N))`` of average ranks.

    Example:
        >>> round(critical_difference(3, 10), 3)  # Demšar (2006): q_0.05 = 2.343 for k = 3
        1.048
    """
    if num_methods < 2 or num_tasks < 1:
        raise ValueError(f"need at least 2 methods and 1 task, got {num_methods} and {num_tasks}")
    q = float(stats.studentized_range.ppf(1 - alpha, num_methods, np.inf)) / math.sqrt(2)
    return q * math.sqrt(num_methods * (num_methods + 1) / (6 * num_tasks))


def _table(scores: dict[str, dict[str, float]], methods: list[str] | None) -> tuple[list, list, np.ndarray]:
    tasks = list(scores)
    if not tasks:
        raise ValueError("scores is empty; give {task: {method: score}} for at least two tasks")
    methods = list(methods) if methods is not None else list(scores[tasks[0]])
    missing = [(t, m) for t in tasks for m in methods if m not in scores[t]]
    if missing:
        raise ValueError(
            f"every method needs a score on every task; missing {missing[:5]}{' ...' if len(missing) > 5 else ''}. "
            "Rank only the methods run on all the tasks given"
        )
    table = np.array([[float(scores[t][m]) for m in methods] for t in tasks])  # (N, k)
    if not np.isfinite(table).all():
        raise ValueError("scores must be finite numbers")
    return tasks, methods, table


def rank_methods(
    scores: dict[str, dict[str, float]], *, methods: list[str] | None = None, alpha: float = 0.05
) -> dict[str, Any]:
    """Ranks, Friedman / Iman–Davenport tests and the Nemenyi post-hoc test of ``scores[task][method]``.

    Args:
        scores: one score per (task, method), higher is better (e.g. mean accuracy over folds and seeds).
        methods: the methods to rank, in display order (default: those of the first task).
        alpha: significance level of the tests and of the critical difference.

    Returns:
        ``tasks``, ``methods``, ``ranks`` ({task: {method: rank}}), ``average_ranks`` ({method: R_j}, best first),
        ``friedman`` (``statistic``, ``p_value``, ``df``, ``iman_davenport``, ``iman_davenport_p``,
        ``iman_davenport_df``), ``nemenyi`` (``critical_difference``, ``p_values`` {a: {b: p}}), ``alpha``,
        ``num_tasks``, ``num_methods``.

    Raises:
        ValueError: fewer than 2 tasks or 3 methods (Friedman's test needs them), or a missing score.

    Example:
        Four tasks, three methods, no ties: the statistics follow the module docstring's formulas.

        >>> rows = {"t1": (0.9, 0.8, 0.7), "t2": (0.85, 0.86, 0.7), "t3": (0.8, 0.75, 0.6), "t4": (0.7, 0.65, 0.66)}
        >>> scores = {task: dict(zip(["daam", "mha", "linear"], row)) for task, row in rows.items()}
        >>> result = rank_methods(scores)
        >>> result["average_ranks"], result["ranks"]["t2"]
        ({'daam': 1.25, 'mha': 2.0, 'linear': 2.75}, {'daam': 2.0, 'mha': 1.0, 'linear': 3.0})
        >>> R, N, k = result["average_ranks"].values(), 4, 3
        >>> chi2 = 12 * N / (k * (k + 1)) * (sum(r * r for r in R) - k * (k + 1) ** 2 / 4)
        >>> chi2, result["friedman"]["statistic"], (N - 1) * chi2 / (N * (k - 1) - chi2)
        (4.5, 4.5, 3.857142857142857)
        >>> result["friedman"]["iman_davenport"] == 27 / 7
        True
        >>> nemenyi = result["nemenyi"]
        >>> round(nemenyi["critical_difference"], 3), round(nemenyi["p_values"]["daam"]["linear"], 3)
        (1.657, 0.086)
    """
    tasks, methods, table = _table(scores, methods)
    n, k = table.shape
    if n < 2 or k < 3:
        raise ValueError(f"the Friedman test needs at least 2 tasks and 3 methods, got {n} and {k}")
    ranks = np.vstack([stats.rankdata(-row) for row in table])  # (N, k), 1 = best
    average = ranks.mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about small N; the numbers are still the textbook ones
        chi2, p = stats.friedmanchisquare(*table.T)
    chi2, p = float(chi2), float(p)
    denominator = n * (k - 1) - chi2
    f_id = math.inf if denominator <= 0 else (n - 1) * chi2 / denominator
    df_id = (k - 1, (k - 1) * (n - 1))
    p_id = 0.0 if math.isinf(f_id) else float(stats.f.sf(f_id, *df_id))
    nemenyi = _nemenyi(table, methods)
    order = np.argsort(average, kind="stable")
    return {
        "tasks": tasks,
        "methods": methods,
        "scores": {t: dict(zip(methods, map(float, row))) for t, row in zip(tasks, table)},
        "ranks": {t: dict(zip(methods, map(float, row))) for t, row in zip(tasks, ranks)},
        "average_ranks": {methods[j]: float(average[j]) for j in order},
        "friedman": {
            "statistic": chi2,
            "p_value": p,
            "df": k - 1,
            "iman_davenport": f_id,
            "iman_davenport_p": p_id,
            "iman_davenport_df": list(df_id),
        },
        "nemenyi": {"critical_difference": critical_difference(k, n, alpha=alpha), "p_values": nemenyi},
        "alpha": alpha,
        "num_tasks": n,
        "num_methods": k,
    }


def _nemenyi(table: np.ndarray, methods: list[str]) -> dict[str, dict[str, float]]:
    import pandas as pd
    import scikit_posthocs as sp

    frame = pd.DataFrame(table, columns=methods)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        matrix = sp.posthoc_nemenyi_friedman(frame)
    return {a: {b: float(matrix.loc[a, b]) for b in methods if b != a} for a in methods}


def plot_critical_difference(result: dict[str, Any], path: str | Path, *, title: str = "") -> None:
    """The critical-difference diagram of :func:`rank_methods`' result: average ranks on an axis, methods joined
    by a bar when the Nemenyi test does not separate them (scikit-posthocs' ``critical_difference_diagram``).

    Example:
        >>> import tempfile
        >>> scores = {t: {"daam": 0.9 - i / 50, "mha": 0.8, "linear": 0.7 + i / 100} for i, t in enumerate("abc")}
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_critical_difference(rank_methods(scores), Path(folder) / "cd.png", title="demo")
        ...     (Path(folder) / "cd.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scikit_posthocs as sp

    from densattn.io import save_figure

    methods = result["methods"]
    p = result["nemenyi"]["p_values"]
    sig = pd.DataFrame([[1.0 if a == b else p[a][b] for b in methods] for a in methods], index=methods, columns=methods)
    height = 1.2 + 0.28 * len(methods)
    fig, ax = plt.subplots(figsize=(7.5, height))
    sp.critical_difference_diagram(
        pd.Series(result["average_ranks"]),
        sig,
        ax=ax,
        alpha=result["alpha"],  # bars join methods the pairwise Nemenyi test does not separate; CD in the title
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    friedman = result["friedman"]
    subtitle = (
        f"{result['num_tasks']} tasks, {result['num_methods']} methods; Friedman χ²={friedman['statistic']:.2f} "
        f"(p={friedman['p_value']:.3g}), Iman–Davenport p={friedman['iman_davenport_p']:.3g}; "
        f"Nemenyi CD={result['nemenyi']['critical_difference']:.2f} (α={result['alpha']})"
    )
    ax.set_title((title + "\n" if title else "") + subtitle, fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(path))
    plt.close(fig)
