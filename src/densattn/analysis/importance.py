"""Importance Factor (IF): what a DAAM head looks at, as a ``(layers, features)`` map, layer shares and a ranking.

Paper: Ioannides, Chadha, Elkins, "Density Adaptive Attention is All You Need", arXiv
`2401.11143 <https://arxiv.org/abs/2401.11143>`_, §IF and Fig. 3 (docs/design.md, "Importance Factor"). With
``DA`` the mean DAAM weight map over a data set (one weight per layer ``l`` and feature ``f``)::

    DA[l, f] = mean_n a[n, l, f];   IF = (DA - min DA) / (max DA - min DA);   share[l] = sum_f DA[l, f] / sum DA

When ``max DA = min DA`` the IF map is all zeros and a warning is raised. The mean is a running mean in float64
(no per-batch storage). Layers are ranked by their share of the total weight (the same order as their mean IF).

What IF measures: the DAAM gate of a layer is a function of how far the layer's (standardised) feature deviates
from the other layers of its head (docs/design.md, "The DAAM kernel"), with offsets and spreads shared by the
layers of a head. So IF ranks layers by how *typical* they are under the learned density, which is not necessarily
how much label information they carry. Measure before trusting it: :func:`densattn.analysis.explain.explain`
compares its deletion curve with occlusion, gradient × input, integrated gradients and random orders, and
:mod:`densattn.analysis.sanity` shows it missing the one informative layer of a synthetic task.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from densattn.analysis.runs import features_for_run, read_run_config, run_split_indices
from densattn.data.cache import FeatureSet
from densattn.io import atomic_write_json, atomic_write_text, save_figure

__all__ = [
    "ImportanceFactor",
    "density_module",
    "density_weights",
    "explain_run",
    "features_for_run",
    "importance_of",
    "plot_importance",
    "plot_layer_share",
    "real_features",
    "run_split_indices",
]

_read_config = read_run_config  # the name older code imported


class ImportanceFactor:
    """Streaming accumulator of DAAM weight maps ``(B, L, d)`` -> IF map, layer shares and ranking.

    Args:
        num_layers: ``L``, the size of the DAAM norm axis (pooled encoder layers).
        dim: ``d``, the feature size.
        head_sizes: sizes of the DAAM heads' contiguous layer chunks (default: one head over all layers); used by
            :meth:`importance` with ``per_head=True``.
        feature_mask: optional bool ``(L, d)``, True = a real feature. Entries set False (e.g. zero padding of
            layers narrower than ``d``, constant over the data set) are left out of the min/max and the layer
            shares, and get IF 0.

    Example:
        >>> acc = ImportanceFactor(3, 2)
        >>> acc.update(torch.tensor([[[0.2, 0.4], [0.6, 0.8], [1.0, 0.2]]]))
        >>> acc.importance()
        tensor([[0.0000, 0.2500],
                [0.5000, 0.7500],
                [1.0000, 0.0000]], dtype=torch.float64)
        >>> acc.layer_ranking(), [round(s, 3) for s in acc.layer_share().tolist()]
        ([1, 2, 0], [0.188, 0.438, 0.375])
    """

    def __init__(
        self, num_layers: int, dim: int, *, head_sizes: list[int] | None = None, feature_mask: Tensor | None = None
    ) -> None:
        if not isinstance(num_layers, int) or num_layers < 1 or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"num_layers and dim must be positive ints, got {num_layers!r}, {dim!r}")
        head_sizes = list(head_sizes) if head_sizes is not None else [num_layers]
        if sum(head_sizes) != num_layers or min(head_sizes) < 1:
            raise ValueError(f"head_sizes {head_sizes} must be positive and sum to num_layers={num_layers}")
        if feature_mask is not None:
            feature_mask = torch.as_tensor(feature_mask, dtype=torch.bool).cpu()
            if tuple(feature_mask.shape) != (num_layers, dim) or not feature_mask.any(1).all():
                raise ValueError(
                    f"feature_mask must be bool ({num_layers}, {dim}) with at least one True per layer, got "
                    f"shape {tuple(feature_mask.shape)}"
                )
        self.num_layers, self.dim, self.head_sizes = num_layers, dim, head_sizes
        self.feature_mask = feature_mask
        self.count = 0
        self._mean = torch.zeros(num_layers, dim, dtype=torch.float64)

    def update(self, weights: Tensor) -> None:
        """Add a batch of weight maps ``(B, L, d)`` (any float dtype) to the running mean."""
        if weights.dim() != 3 or tuple(weights.shape[1:]) != (self.num_layers, self.dim):
            raise ValueError(
                f"weights must be (batch, {self.num_layers}, {self.dim}), got {tuple(weights.shape)}; pass the "
                "DAAM weights of the head (densattn.analysis.importance.density_weights)"
            )
        n = weights.shape[0]
        if n == 0:
            return
        batch_mean = weights.detach().to("cpu", torch.float64).mean(0)  # (L, d)
        self.count += n
        self._mean += (batch_mean - self._mean) * (n / self.count)  # running mean, exact for any batch sizes

    def mean_weights(self) -> Tensor:
        """``DA``: the mean weight map ``(L, d)`` in float64."""
        self._need_data()
        return self._mean.clone()

    def importance(self, *, per_head: bool = False) -> Tensor:
        """IF map ``(L, d)`` in [0, 1]: min-max scaled ``DA`` (per DAAM head's layer chunk with ``per_head``)."""
        self._need_data()
        mask = self.feature_mask if self.feature_mask is not None else torch.ones_like(self._mean, dtype=torch.bool)
        if not per_head:
            return _minmax(self._mean, mask, "the mean DAAM weight map")
        chunks = zip(torch.split(self._mean, self.head_sizes), torch.split(mask, self.head_sizes))
        return torch.cat([_minmax(c, m, f"head {h}'s mean weight map") for h, (c, m) in enumerate(chunks)])

    def layer_share(self) -> Tensor:
        """Each layer's share of the total weight, ``(L,)`` summing to 1 (uniform when the total is 0).

        ``share[l] = w[l] / sum w`` with ``w[l]`` the layer's mean of ``DA`` over its real features (the sum over
        features divided by ``d`` when there is no ``feature_mask``, which gives the same shares)."""
        da = self.mean_weights()
        if self.feature_mask is None:
            per_layer = da.mean(1)  # (L,)
        else:
            per_layer = (da * self.feature_mask).sum(1) / self.feature_mask.sum(1)
        total = per_layer.sum()
        if total <= 0:
            return torch.full_like(per_layer, 1.0 / self.num_layers)
        return per_layer / total

    def layer_ranking(self) -> list[int]:
        """Layer indices, most important first (by share of the weight; ties keep the lower index first)."""
        share = self.layer_share().numpy()
        return [int(i) for i in np.argsort(-share, kind="stable")]

    def layer_mean_importance(self) -> Tensor:
        """Mean IF of each layer over its real features, ``(L,)`` (same order as :meth:`layer_share`)."""
        imp = self.importance()
        if self.feature_mask is None:
            return imp.mean(1)
        return (imp * self.feature_mask).sum(1) / self.feature_mask.sum(1)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: count, ranking, shares, per-layer mean IF and the map's range."""
        da = self.mean_weights()
        return {
            "num_examples": self.count,
            "layer_ranking": self.layer_ranking(),
            "layer_share": self.layer_share().tolist(),
            "layer_mean_if": self.layer_mean_importance().tolist(),
            "mean_weight_min": float(da.min()),
            "mean_weight_max": float(da.max()),
            "head_sizes": self.head_sizes,
            "masked_features": 0 if self.feature_mask is None else int((~self.feature_mask).sum()),
        }

    def _need_data(self) -> None:
        if self.count == 0:
            raise ValueError("no weights accumulated yet; call update() with at least one batch first")


def _minmax(da: Tensor, mask: Tensor, what: str) -> Tensor:
    out = torch.zeros_like(da)
    if not mask.any():
        return out
    lo, hi = da[mask].min(), da[mask].max()
    if not hi > lo:
        warnings.warn(f"{what} is constant ({float(lo):.6g}); the Importance Factor is all zeros", stacklevel=3)
        return out
    out[mask] = (da[mask] - lo) / (hi - lo)
    return out


def density_module(model: nn.Module) -> nn.Module:
    """The :class:`~densattn.attention.DensityAdaptiveAttention` inside a DAAM/GQDAAM head or adapter.

    Raises:
        ValueError: the model's head has no density weights (``mha``, ``conv``, ``pool``, ``linear``, ...).

    Example:
        >>> from densattn.adapters import DensityAdapterModel
        >>> type(density_module(DensityAdapterModel("gqdaam", num_layers=4, dim=8, classes=["a", "b"]))).__name__
        'DensityAdaptiveAttention'
        >>> density_module(DensityAdapterModel("pool", num_layers=4, dim=8, classes=["a", "b"]))
        Traceback (most recent call last):
        ...
        ValueError: head 'pool' has no density (DAAM) weights, so it has no Importance Factor; train with ...
    """
    from densattn.attention import DensityAdaptiveAttention, GroupedQueryDensityAttention

    if isinstance(model, DensityAdaptiveAttention):
        return model
    head = getattr(model, "head", model)
    attention = getattr(head, "attention", None)
    if isinstance(attention, DensityAdaptiveAttention):
        return attention
    if isinstance(attention, GroupedQueryDensityAttention):
        return attention.density
    kind = getattr(model, "head_type", None) or getattr(head, "attention_type", None) or type(head).__name__
    raise ValueError(
        f"head {kind!r} has no density (DAAM) weights, so it has no Importance Factor; "
        "train with --head daam or --head gqdaam"
    )


@torch.no_grad()
def density_weights(model: nn.Module, features: Tensor) -> Tensor:
    """DAAM weights ``(B, L, d)`` of a head (or adapter) for pooled features ``(B, L, d)``, after the head's
    input standardisation, as the head computes them in its forward pass.

    Example:
        >>> from densattn.heads import build_head
        >>> head = build_head("daam", 4, 6, 3).eval()
        >>> weights = density_weights(head, torch.randn(5, 4, 6))
        >>> weights.shape, bool((weights > 0).all())
        (torch.Size([5, 4, 6]), True)
    """
    attention = density_module(model)
    head = getattr(model, "head", model)
    norm = getattr(head, "input_norm", None)
    x = norm(features) if norm is not None else features
    _, weights = attention(x, need_weights=True)
    return weights


def importance_of(
    model: nn.Module, features: Tensor, *, batch_size: int = 256, feature_mask: Tensor | None = None
) -> ImportanceFactor:
    """Accumulate the DAAM weights of ``model`` over ``features (N, L, d)`` in batches (``feature_mask``: see
    :class:`ImportanceFactor`).

    Example:
        >>> from densattn.heads import build_head
        >>> acc = importance_of(build_head("daam", 4, 6, 2).eval(), torch.randn(10, 4, 6), batch_size=3)
        >>> acc.count, acc.importance().shape
        (10, torch.Size([4, 6]))
    """
    from densattn.functional import head_chunk_sizes

    attention = density_module(model)
    num_layers, dim = features.shape[1], features.shape[2]
    sizes = head_chunk_sizes(num_layers, attention.num_heads, allow_ragged_heads=attention.allow_ragged_heads)
    acc = ImportanceFactor(num_layers, dim, head_sizes=sizes, feature_mask=feature_mask)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(features), batch_size):
            acc.update(density_weights(model, features[i : i + batch_size]))
    finally:
        model.train(was_training)
    return acc


def explain_run(
    run_dir: str | Path,
    *,
    split: str = "val",
    out: str | Path | None = None,
    features: FeatureSet | None = None,
    cache_dir: str | Path | None = None,
    fold: int = 0,
) -> dict[str, Any]:
    """Importance Factor of a trained run's adapter (fold ``fold``'s best model) on its ``split`` of that fold.

    Writes ``if_map.csv`` (layers x features), ``layer_share.csv``, ``if_heatmap.png``, ``layer_share.png`` and
    ``importance.json`` into ``out`` (default ``RUN/explain``) and returns the summary dict (``layer_ranking``,
    ``layer_share``, ``layer_mean_if``, ``split``, ``num_examples``, ``files``, ...).

    Raises:
        ValueError: the run's head has no density weights, or the features do not match the run.

    Example:
        A DAAM head trained on synthetic features (layers ``L0``..``L3``), explained on fold 0's validation split:

        >>> import tempfile
        >>> from densattn.train import TrainConfig, run_experiment
        >>> x, y = torch.randn(40, 4, 6, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 2
        >>> fs = FeatureSet(x, y, ["a", "b"], [str(i) for i in range(40)])
        >>> with tempfile.TemporaryDirectory() as run:
        ...     _ = run_experiment(fs, head="daam", out=run, folds=2, plots=False, train_config=TrainConfig(epochs=1))
        ...     summary = explain_run(run, features=fs)
        ...     print(sorted(p.name for p in (Path(run) / "explain").iterdir()))
        ['if_heatmap.png', 'if_map.csv', 'importance.json', 'layer_share.csv', 'layer_share.png']
        >>> summary["layer_names"], sorted(summary["layer_ranking"]), round(sum(summary["layer_share"]), 6)
        (['L0', 'L1', 'L2', 'L3'], [0, 1, 2, 3], 1.0)
    """
    from densattn.analysis.runs import ExplainableRun

    run_dir = Path(run_dir)
    run = ExplainableRun(run_dir, features=features, cache_dir=cache_dir)  # refuses end-to-end runs
    model = run.adapter(fold)
    density_module(model)  # fail early, before loading features, for heads without density weights
    config = run.config
    x, _ = run.data(split, fold)
    real = run.feature_mask()
    acc = importance_of(model, x, feature_mask=real)
    out = Path(out) if out is not None else run_dir / "explain"
    names = run.layer_names
    if_map = acc.importance()
    share = acc.layer_share()
    summary = {
        **acc.summary(),
        "split": split,
        "fold": fold,
        "run": str(run_dir),
        "head": getattr(model, "head_type", type(model).__name__),
        "layer_names": names,
        "files": {},
    }
    atomic_write_text(out / "if_map.csv", _map_csv(if_map, names))
    atomic_write_text(out / "layer_share.csv", _share_csv(acc, names))
    title = f"{summary['head']} IF ({config.get('data', '?')}, {config.get('encoder', {}).get('name', '?')}, {split})"
    plot_importance(if_map, out / "if_heatmap.png", layer_labels=names, title=title, feature_mask=real)
    plot_layer_share(share, out / "layer_share.png", layer_labels=names, title=f"layer share of DAAM weight ({split})")
    summary["files"] = {k: str(out / k) for k in ("if_map.csv", "layer_share.csv", "if_heatmap.png", "layer_share.png")}
    atomic_write_json(out / "importance.json", summary)
    return summary


def real_features(features: Tensor) -> Tensor:
    """``(L, d)`` bool: True where a feature varies over the data set. Constant entries are padding (e.g.
    EfficientNet blocks narrower than 320 channels are zero-padded); their DAAM weight says nothing about the data.

    A layer that is constant everywhere is kept whole (rather than dropped).

    Example:
        >>> x = torch.randn(5, 2, 3)
        >>> x[:, 0, 2] = 0.0  # padding of a narrower layer
        >>> x[:, 1] = 1.0  # a constant layer: kept
        >>> real_features(x).tolist()
        [[True, True, False], [True, True, True]]
    """
    constant = features.amax(0) == features.amin(0)  # (L, d)
    if constant.all(1).any():  # a layer constant everywhere: keep it rather than drop it
        constant[constant.all(1)] = False
    return ~constant


def layer_names(num_layers: int) -> list[str]:
    """Labels for the pooled layers: ``"L0"``..``"L{n-1}"`` (L0 is the encoder's first pooled output)."""
    return [f"L{i}" for i in range(num_layers)]


def _map_csv(if_map: Tensor, names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", *[f"f{j}" for j in range(if_map.shape[1])]])
    for name, row in zip(names, if_map.tolist()):
        writer.writerow([name, *[f"{v:.6f}" for v in row]])
    return buf.getvalue()


def _share_csv(acc: ImportanceFactor, names: list[str]) -> str:
    share, mean_if = acc.layer_share().tolist(), acc.layer_mean_importance().tolist()
    rank = {layer: r + 1 for r, layer in enumerate(acc.layer_ranking())}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["layer", "index", "share", "mean_if", "rank"])
    for i, name in enumerate(names):
        writer.writerow([name, i, f"{share[i]:.6f}", f"{mean_if[i]:.6f}", rank[i]])
    return buf.getvalue()


def plot_importance(
    if_map: Tensor,
    path: str | Path,
    *,
    layer_labels: list[str] | None = None,
    title: str = "IF",
    feature_mask: Tensor | None = None,
) -> None:
    """Heatmap of an IF map (layers x features) with labelled axes and a colour bar; masked-out (padding)
    features are drawn light grey.

    Example:
        >>> import tempfile
        >>> mask = torch.ones(3, 4, dtype=torch.bool)
        >>> mask[0, 3] = False
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_importance(torch.rand(3, 4), Path(folder) / "if.png", feature_mask=mask)
        ...     (Path(folder) / "if.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    from densattn.train.plots import plt

    data = np.array(if_map, dtype=float)
    if feature_mask is not None:
        data[~np.asarray(feature_mask, dtype=bool)] = np.nan
    labels = layer_labels or layer_names(data.shape[0])
    fig, ax = plt.subplots(figsize=(9, 0.32 * data.shape[0] + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks(range(data.shape[0]), labels, fontsize=8)
    ax.set(xlabel="feature index", ylabel="encoder layer", title=title)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="Importance Factor")
    save_figure(fig, Path(path))


def plot_layer_share(share: Tensor, path: str | Path, *, layer_labels: list[str] | None = None, title: str = ""):
    """Bar chart of each layer's share of the total DAAM weight, with the uniform share as a dashed line.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     plot_layer_share(torch.tensor([0.3, 0.2, 0.5]), Path(folder) / "share.png", title="demo")
        ...     (Path(folder) / "share.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    from densattn.train.plots import plt

    values = np.asarray(share, dtype=float)
    labels = layer_labels or layer_names(len(values))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(values) + 1.5), 3.0))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.axhline(1.0 / len(values), color="gray", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    low, high = float(values.min()), float(values.max())
    pad = max((high - low) * 0.5, 1e-4)
    ax.set_ylim(max(0.0, low - pad), high + pad)  # shares are often close: zoom so the differences show
    ax.set(xlabel="encoder layer", ylabel="share of total weight", title=title or "layer share")
    ax.legend(fontsize=7)
    save_figure(fig, Path(path))
