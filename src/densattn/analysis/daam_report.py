"""What a DAAM head learned: its offsets and spreads, and how far they moved from initialisation.

For every :class:`~densattn.attention.DensityAdaptiveAttention` inside a module (a ``DensityHead``, a GQDAAM, a bare
DAAM layer) and every head ``h`` of it, :func:`daam_parameter_report` summarises over features and Gaussians:

* ``offset``, ``spread``: the learned values (mean, std, min, quantiles, max);
* ``offset_shift_abs`` = ``|delta - delta_init|`` and ``spread_shift`` = ``xi - xi_init`` (signed).

The initial values are those of the module's preset (``paper``: delta 0, xi 2; ``mixture``: offsets on [-1, 1],
xi 1) or, exactly, those of an ``initial`` copy / state dict taken before training (needed for the random spreads of
``mixture_of_densities``; without it that preset's spread shift is reported as None). The paper reports learned
spreads within 1.88–2.06 of the initial 2 (arXiv `2401.11143 <https://arxiv.org/abs/2401.11143>`_); this report
makes that visible for any run. :func:`plot_daam_parameters` draws the shifts as box plots, one box per head.

Example:
    >>> from densattn.heads import DensityHead
    >>> report = daam_parameter_report(DensityHead(7, 384, 4))
    >>> report["summary"]["max_abs_offset_shift"], report["summary"]["max_abs_spread_shift"]
    (0.0, 0.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.attention.density import PRESETS, DensityAdaptiveAttention
from densattn.io import save_figure

__all__ = ["daam_parameter_report", "plot_daam_parameters"]

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _describe(values: Tensor) -> dict[str, float]:
    v = values.detach().double().flatten().cpu().numpy()
    q = np.quantile(v, QUANTILES)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        **{f"q{int(p * 100):02d}": float(x) for p, x in zip(QUANTILES, q)},
        "max": float(v.max()),
    }


def _preset_init(module: DensityAdaptiveAttention) -> tuple[Tensor, Tensor | None]:
    """Deterministic initial (offset, spread) of the module's preset; spread None where the init is random."""
    init = PRESETS[module.preset].init
    offset = torch.zeros_like(module.mean_offset)
    if init == "paper":
        return offset, torch.full_like(module.spread, 2.0)
    if init == "mixture":
        n = module.num_gaussians
        grid = torch.linspace(-1.0, 1.0, n) if n > 1 else torch.zeros(1)
        view = (1, n) if module.num_features is None else (1, n, 1)
        return grid.view(view).expand_as(offset).to(offset), torch.ones_like(module.spread)
    return offset, None  # mixture_of_densities: spread = exp(randn), unknown without the initial state


def daam_parameter_report(head: nn.Module, initial: nn.Module | dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Per DAAM module and head: learned offsets/spreads and their movement from initialisation.

    Args:
        head: a module holding one or more ``DensityAdaptiveAttention`` (or one itself).
        initial: the same module before training, or its ``state_dict()``; default: the preset's initial values.

    Returns:
        ``{"modules": [{"module", "preset", "num_heads", "num_gaussians", "heads": [{"head", "offset",
        "spread", "offset_shift_abs", "spread_shift"}]}], "summary": {"max_abs_offset_shift",
        "mean_abs_offset_shift", "max_abs_spread_shift", "mean_abs_spread_shift"}}``; each value entry is
        ``{mean, std, min, q05, q25, q50, q75, q95, max}`` (``spread_shift`` None when its init is unknown).
        JSON-serialisable. ``modules`` is empty when ``head`` has no DAAM module.

    Example:
        Move every spread by +0.1 and every offset by -0.2, as training might:

        >>> import copy
        >>> from densattn.heads import DensityHead
        >>> head = DensityHead(4, 8, 2, num_heads=2)
        >>> initial = copy.deepcopy(head.state_dict())
        >>> with torch.no_grad():
        ...     _ = head.attention.spread.add_(0.1), head.attention.mean_offset.sub_(0.2)
        >>> report = daam_parameter_report(head, initial)
        >>> module = report["modules"][0]
        >>> module["module"], module["preset"], len(module["heads"]), round(module["heads"][1]["spread"]["mean"], 4)
        ('attention', 'paper', 2, 2.1)
        >>> for key, value in report["summary"].items():
        ...     print(key, round(value, 4))
        max_abs_offset_shift 0.2
        mean_abs_offset_shift 0.2
        max_abs_spread_shift 0.1
        mean_abs_spread_shift 0.1
    """
    initial_state = initial.state_dict() if isinstance(initial, nn.Module) else initial
    modules = []
    offset_shifts, spread_shifts = [], []
    for name, module in head.named_modules():
        if not isinstance(module, DensityAdaptiveAttention):
            continue
        prefix = f"{name}." if name else ""
        if initial_state is not None:
            try:
                init_offset = initial_state[f"{prefix}mean_offset"].to(module.mean_offset)
                init_spread = initial_state[f"{prefix}spread"].to(module.spread)
            except KeyError as err:
                raise ValueError(f"initial holds no {err.args[0]!r}; pass the same head before training") from None
        else:
            init_offset, init_spread = _preset_init(module)
        offset, spread = module.mean_offset.detach(), module.spread.detach()
        heads = []
        for h in range(module.num_heads):  # parameters: (H, N) or (H, N, F)
            d_offset = (offset[h] - init_offset[h]).abs()
            d_spread = None if init_spread is None else spread[h] - init_spread[h]
            offset_shifts.append(d_offset.flatten())
            if d_spread is not None:
                spread_shifts.append(d_spread.abs().flatten())
            heads.append(
                {
                    "head": h,
                    "offset": _describe(offset[h]),
                    "spread": _describe(spread[h]),
                    "offset_shift_abs": _describe(d_offset),
                    "spread_shift": None if d_spread is None else _describe(d_spread),
                }
            )
        modules.append(
            {
                "module": name or "(root)",
                "preset": module.preset,
                "num_heads": module.num_heads,
                "num_gaussians": module.num_gaussians,
                "initial_offset_mean": float(init_offset.mean()),
                "initial_spread_mean": None if init_spread is None else float(init_spread.mean()),
                "heads": heads,
            }
        )
    summary: dict[str, float | None] = {
        "max_abs_offset_shift": None,
        "mean_abs_offset_shift": None,
        "max_abs_spread_shift": None,
        "mean_abs_spread_shift": None,
    }
    if offset_shifts:
        o = torch.cat(offset_shifts)
        summary["max_abs_offset_shift"], summary["mean_abs_offset_shift"] = float(o.max()), float(o.mean())
    if spread_shifts:
        s = torch.cat(spread_shifts)
        summary["max_abs_spread_shift"], summary["mean_abs_spread_shift"] = float(s.max()), float(s.mean())
    return {"modules": modules, "summary": summary}


def _box(stats: dict[str, float], label: str) -> dict[str, Any]:
    return {
        "label": label,
        "whislo": stats["q05"],
        "q1": stats["q25"],
        "med": stats["q50"],
        "q3": stats["q75"],
        "whishi": stats["q95"],
        "mean": stats["mean"],
        "fliers": [stats["min"], stats["max"]],
    }


def plot_daam_parameters(report: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Box plots (5–95% whiskers, min/max as points) of ``|offset − init|`` and ``spread − init`` per head.

    Example:
        >>> import tempfile
        >>> from densattn.heads import DensityHead
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_daam_parameters(daam_parameter_report(DensityHead(4, 8, 2)), Path(folder) / "daam.png")
        ...     (Path(folder) / "daam.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    offset_boxes, spread_boxes = [], []
    for m in report["modules"]:
        for h in m["heads"]:
            label = f"{m['module']}\nh{h['head']}" if len(report["modules"]) > 1 else f"head {h['head']}"
            offset_boxes.append(_box(h["offset_shift_abs"], label))
            if h["spread_shift"] is not None:
                spread_boxes.append(_box(h["spread_shift"], label))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, boxes, ylabel in (
        (axes[0], offset_boxes, "|offset − init|"),
        (axes[1], spread_boxes, "spread − init"),
    ):
        if boxes:
            ax.bxp(boxes, showmeans=True, showfliers=True)
        else:
            ax.text(0.5, 0.5, "no DAAM parameters" if not report["modules"] else "init unknown", ha="center")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title or "learned DAAM parameters vs initialisation (per head)")
    fig.tight_layout()
    save_figure(fig, path)
